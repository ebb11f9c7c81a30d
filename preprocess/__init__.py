"""The reference's data command line, run from the repository root:

    python -m preprocess.data_processing_pipeline --total_num_workers 96 --per_gpu_num_workers 12 \
        --resolution 256 --sync_conf_threshold 3 --temp_dir temp --input_dir ROOT/raw

runs `python -m scripts.data_processing_pipeline` with the same arguments (the stages live in
latentsync/data/preprocess/; `--help` shows how the reference's options map onto ours).
"""
