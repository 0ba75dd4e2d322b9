"""Hydra instantiates launchers from the hydra_plugins namespace only: cms's SLURM launcher lives here."""
