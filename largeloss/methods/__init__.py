"""The methods: pure loss maths (losses.py for the two papers, peer_losses.py for the later
methods), the method objects that own their state (registry.py), and their public entry points."""
