"""Loading any Hugging Face decoder through TransformerBridge, and the final layer as the paper sees it."""
