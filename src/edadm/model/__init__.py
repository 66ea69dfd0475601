"""Knowledge about diffusers denoisers: reference configs, blocks and layers."""
