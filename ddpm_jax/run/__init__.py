"""A run and its workdir: building it from the config, the training loop, --mode=sample/eval, checkpoints,
the workdir's files, the writers (TensorBoard, W&B) and the multi-process runtime. [I/O]"""
