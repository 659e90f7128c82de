"""Mask3D (Schult et al., ICRA 2023) class-agnostic instance proposals on spconv, from official checkpoints."""
