"""Loss functions: focal loss (sigmoid and soft-max forms) and the segmentation losses."""
