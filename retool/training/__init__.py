"""Training: recipes, the RL math (advantages, losses) and the SFT/GRPO/PPO loops."""
