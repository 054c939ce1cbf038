"""The methods: pure loss maths (losses.py for the two papers, peer_losses.py for the later
methods, vlp_losses.py for the vision-language pseudo-label methods and CRISP), the method objects
that own their state (registry.py; vlp.py, imported here so that every import of the package
registers them), and their public entry points."""
from largeloss.methods import vlp  # noqa: F401  (registers gpr, vlpl, crisp)
