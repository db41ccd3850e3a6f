"""Training methods (SDFT, SFT, DFT, CPT; registry.py names them) and what they share: the native loop, the Hugging
Face Trainer session, losses, teacher handles, rollouts, tokenisation and length caps, the in-memory adapter fit."""
