"""segapp: a Flower app for federated binary lesion segmentation (Message API)."""
