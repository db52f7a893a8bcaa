"""The HTTP API, served beside the pages by the same `streamlit run Home.py` (Home.py's st.App):
openai.py (OpenAI-compatible), native.py (the app's own data), app.py (routes and the guard),
errors.py (OpenAI's error shape, bounded bodies)."""

from core.api.app import api_middleware, api_routes
from core.api.config import ApiConfig

__all__ = ["ApiConfig", "api_middleware", "api_routes"]
