"""The Wan2.2 VAE (48 latent channels, 4x16x16 compression): WanVAEConfig, WanVAE, load_wan_vae."""
