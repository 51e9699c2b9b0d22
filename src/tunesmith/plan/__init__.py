"""The memory planner: what a fine-tuning run will cost on a device, before anything loads."""
