"""The container tests' helpers: Podman, the stand-in images, the manifest's run."""
