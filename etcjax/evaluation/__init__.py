"""The evaluation suite: everything measured besides accuracy.

Tasks (each a module with a `run` that writes tables, figures and
meta.json into `RUN/<task>/<dataset>/`; the CLI is `etcjax.evaluate`):

- `compressibility`: file sizes of plain and encrypted images under JPEG,
  JPEG-LS, JPEG 2000, PNG (the paper's Table IV), and JPEG rate-distortion
  curves of decrypted images.
- `visual_information`: LPIPS and SSIM between plain and encrypted images
  (the paper's Fig. 7).
- `attack_suite`: brute force, FR-Attack, GAN-Attack, ITN-Attack and a
  jigsaw-puzzle solver against every scheme, scored with SSIM and PSNR
  (the paper's Figs. 6 and 8); the attacks themselves are in `attacks`.
- `accuracy`: an exported model on encrypted, JPEG-compressed test images
  (the paper's Table III).
- `report`: one Markdown report per run folder.

Shared pieces: `sources` (datasets in memory), `visual_metrics` (SSIM,
PSNR, LPIPS), `tables` (CSV + Markdown), `figures` (PNG), `outputs`
(atomic task folders).
"""
