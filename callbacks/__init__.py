"""Lightning callbacks: image grids, the cache writer of predictions, resumable checkpoints, DDP buffers, threads."""
