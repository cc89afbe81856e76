"""kfactory's Optuna sweeper for Hydra (Optuna >= 4): pruning, journal storage, continuation."""
