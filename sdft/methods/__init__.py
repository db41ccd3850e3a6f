"""Training methods (SFT, DFT, SDFT) and the pieces they share: losses, teacher handles, rollouts."""
