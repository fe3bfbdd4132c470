"""CLIP (openai/CLIP's ViT models) in Jittor: the model, the BPE tokenizer, CLIP's preprocessing,
weights from a user's file (never downloaded), an embedding cache. See docs/clip.md."""
