"""Training: AFF (fusion + compatible query nets); shared trainer plumbing."""
