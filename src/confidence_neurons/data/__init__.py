"""Text corpora, token sampling and unigram counts (P_freq)."""
