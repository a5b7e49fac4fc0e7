"""cirn.train: models, data, losses, the three stages and evaluation."""
