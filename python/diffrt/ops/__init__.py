
# --- fused attention (issue 3) ---
from .attention import attention, attention_ref  # noqa: E402,F401
# --- end fused attention ---
