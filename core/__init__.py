"""Core engine and persistence of the RWKV role-play app. Never imports streamlit."""
