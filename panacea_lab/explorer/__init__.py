"""The interactive explorer of notebook 04: a restricted eps scored in memory."""
