"""Explicit training loops (stage 1 on cached features; stage 2 LoRA tuning), accelerate-aware."""
