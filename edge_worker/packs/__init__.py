"""Model packs: reading and verifying them, version-1 manifests, signatures, rollouts."""
