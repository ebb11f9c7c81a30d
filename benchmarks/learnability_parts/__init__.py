"""Parts of the learnability benchmark (benchmarks/learnability.py).

plan.py      sizes and steps of the full and the --quick run, the commands of every training step
steps.py     resumable steps: completion records in WORK/steps.json, subprocess runner, peak memory
dubbing.py   held-out dub pairs, the dubs, the controls and the truth renderings
scoring.py   mouth-opening correlation, LSE-C / LSE-D with the benchmark's StableSyncNet, mouth SSIM / PSNR,
             balanced held-out SyncNet accuracy
report.py    DIR/report/: table (markdown), charts (PNG), summary.json
"""
