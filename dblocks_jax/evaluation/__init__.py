"""Sample-quality evaluation: Frechet distances and conditional accuracy in the feature space of a
classifier trained on the dataset itself (`image_quality`), and the standard FID network with a
torch-free reader for its pretrained weights (`inception`, `torch_weights`)."""
