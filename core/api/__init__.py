"""The HTTP API, served beside the pages by the same `streamlit run Home.py` (Home.py's st.App):
openai.py (OpenAI-compatible), native.py (the app's own data), app.py (the app: routes, the
guard, the error handler), errors.py (OpenAI's error shape, one mapping of the core's errors to
HTTP status, bounded bodies), paths.py (which paths are the API's).

Importing this package imports nothing: the server's mount (core/api_mount.py) reads paths.py
before the API is built. Import the modules themselves (`from core.api.app import build_app`).
"""
