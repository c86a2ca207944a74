"""Training engine: config, loops, checkpoints, schedules, distribution, logging."""
