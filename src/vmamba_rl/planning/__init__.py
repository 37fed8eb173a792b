"""Motion planning for the parking task: Reeds-Shepp paths and the hand-off to them."""
