"""m2u.training.models: the M-Seg segmenter, the CARU2-Net generator and the discriminator."""
