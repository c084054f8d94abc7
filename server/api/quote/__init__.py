"""The quote a customer receives (견적서): amounts in Korean words, and the document builders."""
