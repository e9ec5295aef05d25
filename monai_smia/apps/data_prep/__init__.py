"""Turn public medical imaging datasets into MONAI-ready NIfTI/PNG files plus a decathlon-style ``datalist.json``."""
