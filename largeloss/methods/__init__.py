"""The methods: pure loss maths (losses.py for the two papers, peer_losses.py for the later
methods, vlp_losses.py for the vision-language pseudo-label methods and CRISP), the method objects
that own their state (registry.py, and vlp.py whose classes the package's top level registers),
and their public entry points."""
