"""The Lightning callbacks of a stage that ``conf/callbacks`` configures (progress bar, SIGTERM/requeue
checkpoints, divergence guard, W&B panels); the run layer adds the manifest callback itself."""
