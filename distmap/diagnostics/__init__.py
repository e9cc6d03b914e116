"""The paper's diagnostics of finished runs (Fig. 1's Wasserstein distances)."""
