"""The reference's evaluation command lines, run from the repository root:

    python -m eval.eval_sync_conf --video_path video_out.mp4     (= python -m scripts.eval_sync_conf)
    python -m eval.eval_syncnet_acc --config_path configs/syncnet/syncnet_16_pixel.yaml
    python -m eval.eval_fvd --real_videos_dir real/ --fake_videos_dir fake/

Each module here only calls the `main()` of the script in scripts/ with the same arguments; the
scripts accept the reference's option names. The implementations live in latentsync/eval/.
"""
