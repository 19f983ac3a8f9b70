"""Sample-quality metrics: two-sample distances (toy data); FID / KID / IS (images)."""
