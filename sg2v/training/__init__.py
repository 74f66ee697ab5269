"""Training (PyTorch): data sets, losses, pretraining, diffusion training, checkpoints and evaluation.

Each module imports torch; the package itself imports nothing, so `import sg2v.training` stays cheap.
"""
