"""Generated BraTS-layout MRI for Murmur's segmentation workload (``murmur data make-brats``)."""
