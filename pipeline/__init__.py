"""The DVC pipeline's stages (`pipeline/stages/`), the `esva` command line and the stages' exact DVC deps."""
