"""Every word of the interface, in English and Chinese. No streamlit import.

    t("new_chat", "zh")                   -> "新对话"
    t("meta_tokens", "en", n=42)          -> "42 tokens"

A missing key or language falls back to English, then to the key itself, so a slip never breaks
a page; tests/unit/test_i18n.py checks that every key has both languages with the same fields.
Error messages from core/ stay in English; pages put a translated prefix before them.

Plurals: a text with forms separated by "|" ("{n} token|{n} tokens") picks one by its field
`n`: the first for n == 1, the second otherwise (`plural`). Chinese has one form.
"""

from __future__ import annotations

from typing import Any

LANGS: tuple[str, ...] = ("en", "zh")
LANG_NAMES: dict[str, str] = {"en": "English", "zh": "中文"}
DEFAULT_LANG = "en"

# key: (English, 中文)
_S: dict[str, tuple[str, str]] = {
    # app and navigation
    "app_title": ("RWKV Role Play", "RWKV 角色扮演"),
    "nav_home": ("Home", "首页"),
    "nav_chat": ("Chat", "聊天"),
    "nav_characters": ("Characters", "角色"),
    "nav_settings": ("Settings", "设置"),
    "cli_warnings": ("Command-line flags: {text}", "命令行参数：{text}"),
    # password
    "password": ("Password", "密码"),
    "login": ("Log in", "登录"),
    "wrong_password": ("Wrong password.", "密码错误。"),
    "new_password": ("New password", "新密码"),
    "repeat_password": ("Repeat the password", "再次输入密码"),
    "set_password": ("Set password", "设置密码"),
    "remove_password": ("Remove the password", "取消密码"),
    "password_env": (
        "The environment variable RP_PASSWORD sets the password; it takes precedence over the "
        "one saved here.",
        "环境变量 RP_PASSWORD 设置了密码，它优先于这里保存的密码。",
    ),
    "password_is_set": (
        "A password is set: every page asks for it first.",
        "已设置密码：打开任何页面都要先输入密码。",
    ),
    "password_not_set": ("No password is set.", "未设置密码。"),
    "password_saved": ("Password saved.", "密码已保存。"),
    "password_removed": ("Password removed.", "密码已取消。"),
    "err_empty_password": ("The password is empty.", "密码不能为空。"),
    "err_password_mismatch": ("The two passwords differ.", "两次输入的密码不一致。"),
    # safe by default: the password limiter, the network without a password, a locked gate
    "next_try_in": ("Your next try is taken in {s} s.", "{s} 秒后才能再试。"),
    "too_many_tries": (
        "Too many tries. Wait {s} s, then try again.",
        "尝试次数过多。请等待 {s} 秒后再试。",
    ),
    "open_network": (
        "This app listens on the network ({address}) and has no password yet, so it shows "
        "nothing here. Set one: start it with the environment variable RP_PASSWORD, or fill in "
        "this form with the setup code printed in the terminal where the app runs.",
        "本应用正在网络上监听（{address}），但尚未设置密码，所以这里不显示任何内容。"
        "请设置密码：用环境变量 RP_PASSWORD 启动，或在下面的表单中填写运行本应用的终端里"
        "显示的设置码。",
    ),
    "every_address": ("every address", "所有地址"),
    "setup_code": ("Setup code", "设置码"),
    "wrong_setup_code": ("Wrong setup code.", "设置码错误。"),
    "err_password_unreadable": (
        "The password setting cannot be read, so the app stays locked:",
        "无法读取密码设置，应用保持锁定：",
    ),
    # errors
    "err_prefix": ("Could not do that:", "操作失败："),
    "err_load": ("Could not load the model:", "无法加载模型："),
    "err_convert": ("Could not convert the model:", "无法转换模型："),
    "err_import": ("Could not import {file}:", "无法导入 {file}："),
    "err_no_path": ("Give the path of a model file.", "请填写模型文件的路径。"),
    # model
    "model": ("Model", "模型"),
    "no_model_loaded": ("No model is loaded.", "尚未加载模型。"),
    "embedded_model": ("Built-in default (SmolLM2-135M)", "内置默认模型（SmolLM2-135M）"),
    "not_installed": ("not installed", "未安装"),
    "loading_model": ("Loading {name}…", "正在加载 {name}…"),
    "model_loaded_in": ("{name} loaded in {s} s", "{name} 已加载，用时 {s} 秒"),
    "model_ready": ("Model {name} is ready.", "模型 {name} 已就绪。"),
    "model_unloaded": ("The model was unloaded.", "模型已卸载。"),
    "load": ("Load", "加载"),
    "load_named": ("Load {name}", "加载 {name}"),
    "unload": ("Unload", "卸载"),
    "choose_model": ("Choose a model in Settings", "在设置中选择模型"),
    "n_layers": ("{n} layer|{n} layers", "{n} 层"),
    "default_user": ("User", "用户"),  # the user's name in a new chat when none is set
    "runs_llama": ("llama.cpp, GGUF {kind}", "llama.cpp，GGUF {kind}"),
    "runs_rwkv": ("rwkv package (PyTorch), {strategy}", "rwkv 包（PyTorch），{strategy}"),
    "runs_threads": (", {n} thread|, {n} threads", "，{n} 个线程"),
    "n_params": ("{n} parameters", "{n} 参数"),
    "model_file": ("Model file", "模型文件"),
    "model_file_help": (
        "Put .pth (RWKV) or .gguf files in {folder} and they appear here.",
        "把 .pth（RWKV）或 .gguf 文件放进 {folder}，就会出现在这里。",
    ),
    "other_path": ("Another file (type its path)", "其他文件（填写路径）"),
    "model_path": ("Path of the model file", "模型文件路径"),
    "model_server": ("A model server (OpenAI-compatible)", "模型服务器（兼容 OpenAI）"),
    "model_server_help": (
        "The app sends its prompt as text to the server's /v1/completions, with its stop "
        "strings, and streams the reply: llama.cpp's server, vLLM, or another copy of this app "
        "(its state cache then serves your chats). Not used with a server: state files, "
        "several versions in one batch, exact token counts.",
        "应用把提示词作为文本发送到服务器的 /v1/completions，带上停止字符串，并流式接收回复："
        "llama.cpp 的服务器、vLLM，或本应用的另一个副本（由它的状态缓存服务你的聊天）。"
        "使用服务器时不适用：状态文件、一批生成多个版本、精确的令牌数。",
    ),
    "server_url": ("Address", "地址"),
    "runs_remote": ("served by {url}", "由 {url} 提供"),
    "server_model": ("Model name (empty: the first it lists)", "模型名（留空：它列出的第一个）"),
    "server_key": ("API key", "API 密钥"),
    "server_timeout": ("Time-out (seconds)", "超时（秒）"),
    "backend": ("Back end", "推理后端"),
    "backend_auto": ("Automatic (by file type)", "自动（按文件类型）"),
    "backend_rwkv": ("rwkv package (PyTorch, .pth)", "rwkv 包（PyTorch，.pth）"),
    "backend_llama": ("llama.cpp (.gguf)", "llama.cpp（.gguf）"),
    "strategy": ("Strategy", "加载策略"),
    "strategy_help": (
        'How the rwkv package runs the model, e.g. "cpu fp32", "cuda fp16", '
        '"cuda fp16i8 *10 -> cpu fp32". Type your own if it is not in the list.',
        'rwkv 包运行模型的方式，例如 "cpu fp32"、"cuda fp16"、'
        '"cuda fp16i8 *10 -> cpu fp32"。列表中没有的可以自己输入。',
    ),
    "cuda_on_help": (
        "Compile the rwkv package's CUDA kernel (needs CUDA and a compiler).",
        "编译 rwkv 包的 CUDA 内核（需要 CUDA 和编译器）。",
    ),
    "jit_on_help": ("Use TorchScript JIT in the rwkv package.", "rwkv 包使用 TorchScript JIT。"),
    # convert
    "convert": ("Convert a .pth model to GGUF", "把 .pth 模型转换为 GGUF"),
    "convert_help": (
        "llama.cpp runs RWKV-6/7 two to four times faster than the rwkv package on a CPU. "
        "The GGUF file is written in the models folder.",
        "在 CPU 上，llama.cpp 运行 RWKV-6/7 比 rwkv 包快二到四倍。GGUF 文件写在模型文件夹里。",
    ),
    "convert_source": ("Source (.pth)", "源文件（.pth）"),
    "convert_type": ("Tensor type", "张量类型"),
    "convert_type_help": (
        "f16: exact enough and half the size; q8_0: smaller and fastest; f32: exact.",
        "f16：足够精确，体积减半；q8_0：更小、最快；f32：完全精确。",
    ),
    "convert_dest": ("File name in the models folder (.gguf)", "模型文件夹中的文件名（.gguf）"),
    "convert_dest_help": ("The models folder is {folder}.", "模型文件夹是 {folder}。"),
    "convert_exists": (
        "{name} already exists in the models folder.",
        "模型文件夹中已有 {name}。",
    ),
    "convert_replace": ("Replace {name}", "替换 {name}"),
    "convert_start": ("Convert", "开始转换"),
    "converting": ("Converting…", "正在转换…"),
    "converted": ("Written: {path}", "已写入：{path}"),
    # get an RWKV model: the catalog, downloads (pages/models_ui.py)
    "get_model": ("Get an RWKV model", "获取 RWKV 模型"),
    "get_model_help": (
        "RWKV-7 files from the Hugging Face Hub (or a mirror), listed when you ask. Each row "
        "says whether it fits in this machine's free memory and about how fast it would write "
        "here. A download resumes where it stopped, is checked against its SHA-256, and goes "
        "into the models folder.",
        "来自 Hugging Face Hub（或镜像站）的 RWKV-7 模型文件，在你点击时列出。每一行说明它能否放进"
        "本机的空闲内存，以及在这里大约每秒能写多少词元。下载中断后可从断点继续，下载完会核对 "
        "SHA-256，然后放进模型文件夹。",
    ),
    "hub_from": ("Download from {host}", "下载来源：{host}"),
    "hub_endpoint": (
        "Hub address (empty: $HF_ENDPOINT, else huggingface.co)",
        "Hub 地址（留空：使用 $HF_ENDPOINT，否则 huggingface.co）",
    ),
    "hub_endpoint_help": (
        "Where model files are listed and downloaded from: the Hugging Face Hub, or a mirror "
        "such as https://hf-mirror.com (users in China reach the Hub through mirrors). Your Hub "
        "login is sent to huggingface.co only.",
        "列出和下载模型文件的地址：Hugging Face Hub，或镜像站，例如 https://hf-mirror.com（中国用户"
        "通常通过镜像访问）。你的 Hub 登录凭据只会发给 huggingface.co。",
    ),
    "hub_machine": ("This machine: {what}.", "本机：{what}。"),
    "hub_machine_ram": ("{free} of RAM free", "空闲内存 {free}"),
    "hub_machine_gpu": ("{name} with {free} free", "{name}，空闲显存 {free}"),
    "hub_machine_bw": ("memory bandwidth {bw}/s (measured)", "内存带宽 {bw}/s（实测）"),
    "hub_measure": ("Measure again", "重新测量"),
    "hub_look_up": ("Look up the models on {host}", "在 {host} 上查找模型"),
    "hub_refresh": ("Look up again", "重新查找"),
    "hub_listed_ago": ("Listed on {host} {t} ago.", "{t}前从 {host} 列出。"),
    "hub_known_only": (
        "Not looked up yet: these are the files the app knows without the network.",
        "尚未联网查找：下面是本应用不联网也知道的文件。",
    ),
    "hub_recommended": ("recommended", "推荐"),
    "hub_recommended_here": ("Recommended here: {title}", "本机推荐：{title}"),
    "hub_size_unknown": ("size not in the name", "名称中没有参数量"),
    "hub_one_file": ("1 file", "1 个文件"),
    "hub_n_files": ("{n} files", "{n} 个文件"),
    "hub_fits": ("fits ({need} of {free} {where})", "放得下（需要 {need}，{where}空闲 {free}）"),
    "hub_no_fit": (
        "does not fit ({need}, {free} {where})",
        "放不下（需要 {need}，{where}只剩 {free}）",
    ),
    "hub_ram": ("RAM free", "内存"),
    "hub_gpu": ("GPU memory free", "显存"),
    "hub_speed": ("about {n} tokens/s here", "在本机约每秒 {n} 个词元"),
    "hub_as_gguf": ("as a {type} GGUF", "（转换为 {type} GGUF 后）"),
    "hub_downloading": ("Downloading…", "下载中…"),
    "hub_paste": ("Any repository or file on the Hub", "Hub 上的任意仓库或文件"),
    "hub_paste_help": (
        "A repository id (owner/name), owner/name/file.pth, or the address of a repository or "
        "file on the Hub or a mirror.",
        "仓库 ID（owner/name）、owner/name/file.pth，或 Hub / 镜像站上仓库或文件的地址。",
    ),
    "hub_paste_list": ("List its model files", "列出其中的模型文件"),
    "hub_no_model_files": (
        "{repo} has no .pth or .gguf file.",
        "{repo} 中没有 .pth 或 .gguf 文件。",
    ),
    "get": ("Get", "下载"),
    "dismiss": ("Dismiss", "关闭"),
    "err_download": ("Could not download:", "无法下载："),
    "rec_why": (
        "The best quality that fits in free memory (it needs {need} of {free}) and writes at "
        "about {n} tokens/s here (at least {min}).",
        "能放进空闲内存（需要 {need}，空闲 {free}）、且在本机约每秒写 {n} 个词元（至少 {min} 个）的"
        "最好模型。",
    ),
    "rec_why_convert": (
        "That speed is as a {type} GGUF: the app offers the conversion after the download "
        "({disk} more on disk).",
        "这个速度是转换为 {type} GGUF 后的速度：下载完成后应用会提供转换（另占磁盘 {disk}）。",
    ),
    "rec_why_bigger_slow": (
        "The {size} would write at about {n} tokens/s.",
        "{size} 约每秒只能写 {n} 个词元。",
    ),
    "rec_why_bigger_big": ("The {size} would need {need}.", "{size} 需要 {need}。"),
    "rec_none_fits": (
        "No file of the catalog fits in this machine's free memory.",
        "目录中没有能放进本机空闲内存的文件。",
    ),
    "rec_none_fast": (
        "Nothing writes at {min} tokens/s here; the fastest that fits is {title} at about {n}.",
        "本机上没有模型能达到每秒 {min} 个词元；放得下的最快模型是 {title}，约每秒 {n} 个。",
    ),
    "get_offer": (
        "Get {title} ({size}, about {n} tokens/s here)",
        "下载 {title}（{size}，在本机约每秒 {n} 个词元）",
    ),
    "home_embedded": (
        "You are chatting with the built-in SmolLM2-135M, a small stand-in model that writes "
        "poor Chinese. This app is made for RWKV-7 models.",
        "你正在使用内置的 SmolLM2-135M：一个临时替代的小模型，中文写得不好。本应用是为 RWKV-7 "
        "模型设计的。",
    ),
    "home_from": ("It downloads from {host}.", "从 {host} 下载。"),
    "home_more_models": ("More models, a mirror: Settings", "更多模型、镜像设置：设置页"),
    "dl_running": ("Downloading {name} from {host}", "正在从 {host} 下载 {name}"),
    "dl_starting": ("Asking the server…", "正在询问服务器…"),
    "dl_checking": (
        "Checking {done} of the {total} already on disk…",
        "正在核对磁盘上已有的 {total} 中的 {done}…",
    ),
    "dl_verifying": ("Checking the SHA-256…", "正在核对 SHA-256…"),
    "dl_bytes": ("{done} of {total}", "{done} / {total}"),
    "dl_eta": ("{t} left", "还剩 {t}"),
    "dl_waiting": ("waiting for data", "正在等待数据"),
    "dl_done": (
        "{name} is in the models folder (SHA-256 checked).",
        "{name} 已放进模型文件夹（已核对 SHA-256）。",
    ),
    "dl_cancelled": (
        "Download of {name} cancelled; {kept} are kept for a resume.",
        "已取消下载 {name}；已下载的 {kept} 保留，可继续下载。",
    ),
    "dl_resume": ("Resume", "继续下载"),
    "dl_retry": ("Try again", "重试"),
    "dl_discard": ("Delete the {kept} downloaded", "删除已下载的 {kept}"),
    "dur_h": ("{h} h {m} min", "{h} 小时 {m} 分"),
    "dur_m": ("{m} min {s} s", "{m} 分 {s} 秒"),
    "dur_s": ("{s} s", "{s} 秒"),
    "convert_offer_help": (
        "On a CPU, llama.cpp runs it two to four times faster as a GGUF file (as this .pth: "
        "about {n} tokens/s here).",
        "在 CPU 上，转换为 GGUF 后由 llama.cpp 运行要快二到四倍（直接运行这个 .pth：在本机约每秒 "
        "{n} 个词元）。",
    ),
    "convert_offer": (
        "Convert to {type} and load ({disk} on disk, about {n} tokens/s)",
        "转换为 {type} 并加载（占磁盘 {disk}，约每秒 {n} 个词元）",
    ),
    "converting_named": ("Converting to {name}…", "正在转换为 {name}…"),
    # home
    "characters": ("Characters", "角色"),
    "character": ("Character", "角色"),
    "no_characters": (
        "There are no characters yet. Create one or import a card.",
        "还没有角色。请新建一个或导入角色卡。",
    ),
    "create_character": ("Create a character", "新建角色"),
    "start_chat": ("Chat", "聊天"),
    "recent_chats": ("Recent chats", "最近的对话"),
    "no_chats": ("No chats yet.", "还没有对话。"),
    "resume": ("Resume", "继续"),
    # chat
    "chat": ("Chat", "对话"),
    "choose_character": ("Choose a character", "选择角色"),
    "new_chat": ("New chat", "新对话"),
    "character_deleted": (
        "The character {name} of this chat was deleted.",
        "此对话的角色 {name} 已被删除。",
    ),
    "this_chat": ("This chat", "当前对话"),
    "title": ("Title", "标题"),
    "rename": ("Rename", "重命名"),
    "export_markdown": ("Download as Markdown", "下载为 Markdown"),
    "export_jsonl": ("Download as JSONL (SillyTavern)", "下载为 JSONL（SillyTavern）"),
    "delete_chat": ("Delete chat", "删除对话"),
    "delete_chat_confirm": (
        "Delete this chat and all its messages?",
        "删除这个对话及其全部消息？",
    ),
    "import_chat": ("Import a chat", "导入对话"),
    "import_chat_file": ("SillyTavern chat file (.jsonl)", "SillyTavern 对话文件（.jsonl）"),
    "no_chat_open": ("No chat with {name} is open.", "还没有打开与 {name} 的对话。"),
    "start_chat_with": ("Start a chat with {name}", "开始与 {name} 对话"),
    "chat_placeholder": ("Write as {name}…", "以 {name} 的身份说话…"),
    "empty_chat": ("The chat is empty: say something.", "对话是空的：说点什么吧。"),
    "narrator": ("Narrator", "旁白"),
    "you_named": ("{name} (you)", "{name}（你）"),
    "next_speaker": ("Who speaks next", "下一个说话的人"),
    "generate": ("Generate", "生成"),
    "stop": ("Stop", "停止"),
    "waiting_model": (
        "Waiting for the model… (it is also answering another chat)",
        "正在等待模型…（它也在回复另一个对话）",
    ),
    "empty_reply": (
        "The model gave an empty reply. Try again or change the sampling.",
        "模型的回复是空的。请重试或调整采样参数。",
    ),
    "regenerate": ("Regenerate (keeps the other versions)", "重说（保留其他版本）"),
    "continue": ("Continue this message", "继续写这条消息"),
    "edit": ("Edit", "编辑"),
    "edit_message": ("Message", "消息"),
    "more_actions": ("More", "更多"),
    "delete_message": ("Delete this message", "删除这条消息"),
    "delete_version": ("Delete this version", "删除这个版本"),
    "undo": ("Undo", "撤销"),
    "chat_imported": (
        "Imported the chat {title} ({n} message).|Imported the chat {title} ({n} messages).",
        "已导入对话 {title}（{n} 条消息）。",
    ),
    "undo_delete": ("Deleted a message.", "已删除一条消息。"),
    "undo_rewind": (
        "Rewound: removed {n} message.|Rewound: removed {n} messages.",
        "已回退：移除了 {n} 条消息。",
    ),
    "undo_version": ("Deleted a version of the message.", "已删除这条消息的一个版本。"),
    "undo_done_delete": ("The message is back.", "消息已恢复。"),
    "undo_done_rewind": (
        "{n} message is back.|{n} messages are back.",
        "{n} 条消息已恢复。",
    ),
    "undo_done_version": ("The version is back.", "版本已恢复。"),
    "rewind_here": ("Rewind to here (remove the later messages)", "回退到这里（移除之后的消息）"),
    "prev_version": ("Previous version", "上一个版本"),
    "next_version": ("Next version", "下一个版本"),
    "show_earlier": ("Show earlier messages ({n} hidden)", "显示更早的消息（隐藏了 {n} 条）"),
    "meta_tokens": ("{n} token|{n} tokens", "{n} 个词元"),
    "meta_speed": ("{v} tokens/s", "{v} 词元/秒"),
    "meta_stopped": ("stopped", "已停止"),
    "meta_length": ("cut at the token limit", "达到长度上限"),
    "meta_edited": ("edited", "已编辑"),
    # sampling
    "sampling": ("Sampling", "采样"),
    "preset": ("Preset", "预设"),
    "preset_roleplay": ("Role play", "角色扮演"),
    "preset_chat": ("Chat", "聊天"),
    "preset_creative": ("Creative", "创意"),
    "preset_precise": ("Precise", "精确"),
    "preset_greedy": ("Greedy (always the likeliest)", "贪心（总选最可能的）"),
    "preset_custom": ("Custom", "自定义"),
    "preset_none": ("(the app's default)", "（使用应用默认）"),
    "samp_temperature": ("Temperature", "温度"),
    "samp_top_p": ("Top P", "Top P"),
    "samp_top_k": ("Top K (0 = off)", "Top K（0 = 不限）"),
    "samp_min_p": ("Min P", "Min P"),
    "samp_presence_penalty": ("Presence penalty", "存在惩罚"),
    "samp_frequency_penalty": ("Frequency penalty", "频率惩罚"),
    "samp_penalty_decay": ("Penalty decay", "惩罚衰减"),
    "reply_repeated": (
        "That reply repeated an earlier message word for word, so it is being made again "
        "(the first try stays as a version).",
        "这条回复几乎逐字重复了之前的消息，正在重新生成（第一次的结果保留为一个版本）。",
    ),
    "samp_dry_multiplier": (
        "DRY: repeat penalty (0 = off)",
        "DRY：重复惩罚（0 = 关闭）",
    ),
    "samp_dry_base": ("DRY: growth per repeated token", "DRY：每多重复一个词元的增长倍数"),
    "samp_dry_allowed_length": (
        "DRY: repeats this long are free",
        "DRY：不受惩罚的重复长度",
    ),
    "samp_max_tokens": ("Max tokens per reply", "每次回复的最大词元数"),
    "samp_seed": ("Seed", "随机种子"),
    "seed_random": ("random", "随机"),
    "default_preset": ("Default preset for new chats", "新对话的默认预设"),
    "default_preset_help": (
        "Each chat keeps its own sampling; change it in the chat's sidebar.",
        "每个对话有自己的采样设置，可在对话的侧边栏修改。",
    ),
    # characters
    "search": ("Search", "搜索"),
    "search_placeholder": ("name, tag, creator or description", "名字、标签、作者或描述"),
    "no_match": ("No character matches.", "没有匹配的角色。"),
    "new_character": ("New character", "新建角色"),
    "edit_character": ("Edit {name}", "编辑 {name}"),
    "avatar_upload": ("Avatar (PNG, JPEG, WebP, GIF, BMP)", "头像（PNG、JPEG、WebP、GIF、BMP）"),
    "avatar_preview": ("new avatar", "新头像"),
    "remove_avatar": ("Remove the avatar", "删除头像"),
    "state_file": ("RWKV state file", "RWKV 状态文件"),
    "state_file_upload": (
        "State file (.pth from RWKV state tuning, at most {mb} MB)",
        "状态文件（RWKV 状态微调生成的 .pth，最大 {mb} MB）",
    ),
    "state_file_help": (
        "The chat starts from this state instead of the model's own (RWKV-5, 6 and 7 models of "
        "the same size only). A card export names the file and its sha256, without its bytes.",
        "对话从这个状态开始，而不是模型自身的初始状态（仅限同样大小的 RWKV-5、6、7 模型）。"
        "导出角色卡时只写文件名和 sha256，不含文件内容。",
    ),
    "state_file_current": (
        "Current: {name}, {shape}, sha256 {sha}",
        "当前：{name}，{shape}，sha256 {sha}",
    ),
    "state_file_none": (
        "No state file: chats start from the model's state.",
        "没有状态文件：对话从模型的初始状态开始。",
    ),
    "remove_state_file": ("Remove the state file", "删除状态文件"),
    "f_name": ("Name", "名字"),
    "f_description": ("Description / persona", "描述 / 人设"),
    "f_personality": ("Personality", "性格"),
    "f_scenario": ("Scenario", "场景"),
    "f_greeting": ("First message (greeting)", "开场白"),
    "f_alt_greetings": ("Alternate greetings", "备选开场白"),
    "f_alt_help": (
        "Separate greetings with a line that holds only ---",
        "用只含 --- 的一行分隔多个开场白",
    ),
    "f_example_dialogue": ("Example dialogue", "对话示例"),
    "f_example_help": (
        'Lines like "{{user}}: ..." and "{{char}}: ..."',
        '形如 "{{user}}: ..." 和 "{{char}}: ..." 的行',
    ),
    "more_fields": ("More fields", "更多字段"),
    "f_user_name": ("The user's name in this role play", "此角色扮演中用户的名字"),
    "f_user_name_help": (
        "Empty: your name from Settings.",
        "留空则使用设置中你的名字。",
    ),
    "f_stop_strings": ("Stop strings", "停止词"),
    "f_stop_help": ("One a line; type \\n for a line break.", "每行一个；换行写作 \\n。"),
    "f_tags": ("Tags", "标签"),
    "f_tags_help": ("Separated by commas", "用逗号分隔"),
    "f_preset": ("Sampling preset", "采样预设"),
    "f_creator": ("Creator", "作者"),
    "f_creator_notes": ("Creator's notes", "作者备注"),
    "f_system_prompt": ("System prompt", "系统提示"),
    "f_system_help": (
        "Replaces the chat's opening; {{original}} in it stands for the opening the app writes "
        "(description, personality, scenario, persona, example dialogue).",
        "替换对话的开头；其中的 {{original}} 代表应用自己写的开头"
        "（描述、性格、场景、人设、对话示例）。",
    ),
    "f_post_history": ("Post-history instructions", "历史后指令"),
    "f_post_help": (
        "Fed just before each of the character's replies, and stored with the reply.",
        "在角色每次回复之前输入给模型，并与回复一起保存。",
    ),
    "save": ("Save", "保存"),
    "saved": ("Saved.", "已保存。"),
    "cancel": ("Cancel", "取消"),
    "saved_character": ("Saved {name}.", "已保存 {name}。"),
    "duplicate": ("Duplicate", "复制"),
    "duplicated": ("Made a copy: {name}.", "已复制为 {name}。"),
    "delete": ("Delete", "删除"),
    "delete_chats_question": ("What happens to its chats?", "它的对话怎么处理？"),
    "chats_keep": ("Keep them", "保留"),
    "chats_delete": ("Delete them too", "一起删除"),
    "delete_character_confirm": ("Delete {name}", "删除 {name}"),
    "deleted_character": ("Deleted {name}.", "已删除 {name}。"),
    "export": ("Export", "导出"),
    "export_png": ("Card as PNG", "PNG 角色卡"),
    "export_json": ("Card as JSON", "JSON 角色卡"),
    "import_cards": ("Import character cards", "导入角色卡"),
    "import_cards_help": (
        "PNG or JSON cards (SillyTavern V1/V2/V3, or the older app's JSON)",
        "PNG 或 JSON 角色卡（SillyTavern V1/V2/V3，或旧版应用的 JSON）",
    ),
    "import": ("Import", "导入"),
    "imported": ("Imported: {names}", "已导入：{names}"),
    # settings
    "language": ("Language", "语言"),
    "about_you": ("You", "你"),
    "f_your_name": ("Your name", "你的名字"),
    "f_your_name_help": (
        'Used in chats whose character sets no user name. Empty: "User".',
        "用于角色未指定用户名字的对话。留空则为“用户”。",
    ),
    "f_your_persona": ("About you (persona)", "关于你（人设）"),
    "f_your_persona_help": (
        "Told to the model at the start of every chat.",
        "在每个对话开头告诉模型。",
    ),
    "data": ("Data", "数据"),
    "data_dir": (
        "Chats, characters, avatars and state checkpoints live in:",
        "对话、角色、头像和状态缓存保存在：",
    ),
    "models_dir": ("Model files are found in:", "模型文件所在目录："),
    "state_cache": ("State cache", "状态缓存"),
    "state_cache_help": (
        "Model states at message boundaries, so a reply only feeds the new text. "
        "Clearing it loses nothing but speed.",
        "在消息边界保存的模型状态，让回复只需处理新文字。清除它只会损失速度。",
    ),
    "cache_stats": (
        "memory: {mem_n} states, {mem_mb} MB · disk: {disk_n} states, {disk_mb} MB · "
        "hits {hits}, misses {misses}",
        "内存：{mem_n} 个状态，{mem_mb} MB · 磁盘：{disk_n} 个状态，{disk_mb} MB · "
        "命中 {hits}，未命中 {misses}",
    ),
    "state_cache_remote": (
        "The model is served by a model server, which keeps its own cache: these budgets "
        "apply to a model run here.",
        "模型由模型服务器提供，它有自己的缓存：这些上限只用于在本机运行的模型。",
    ),
    "cache_capacity": (
        "At this model's checkpoint size ({mb} MB), the disk budget keeps about {chats} chats "
        "instantly resumable ({regen} with their last reply ready to regenerate too); "
        "{kept} are now.",
        "按此模型的检查点大小（{mb} MB），磁盘上限大约能让 {chats} 个聊天即时续上"
        "（其中 {regen} 个还能即时重新生成最后的回复）；目前有 {kept} 个。",
    ),
    "cache_capacity_grows": (
        "This model's checkpoints grow with a chat, about {kb} KB a token: the disk budget "
        "keeps about {chats} chats of {tokens} tokens instantly resumable; {kept} are now.",
        "此模型的检查点随聊天增长，每个词元约 {kb} KB：磁盘上限大约能让 {chats} 个 {tokens} "
        "词元的聊天即时续上；目前有 {kept} 个。",
    ),
    "cache_mem_mb": ("Memory budget (MB)", "内存上限（MB）"),
    "cache_disk_mb": ("Disk budget (MB)", "磁盘上限（MB）"),
    "clear_cache": ("Clear the cache", "清除缓存"),
    "cache_cleared": ("The state cache was cleared.", "状态缓存已清除。"),
    # safe by default: backups, a database that cannot be opened, threads, interrupted replies
    "backups": ("Backups", "备份"),
    "backups_help": (
        "The app copies its database into {folder} when it starts, at most once a day, and "
        "keeps the newest {n} copies. A restore first copies the current database there too.",
        "应用启动时把数据库复制到 {folder}，每天最多一次，保留最新的 {n} 份。"
        "恢复前也会先把当前数据库复制到那里。",
    ),
    "backups_postgres": (
        "The app keeps its data in PostgreSQL ({url}), which its own tools back up and check, "
        "once for every app server that uses it: the app makes no daily copy of it and restores "
        "none. Back up with pg_dump (daily from cron, or continuous archiving); restore with "
        "pg_restore after stopping every app server; pages are checked as PostgreSQL reads them "
        "when the cluster has data checksums (initdb --data-checksums, as deploy/ makes it), and "
        "pg_amcheck checks tables and indexes. For this database:",
        "应用的数据保存在 PostgreSQL（{url}）中，由它自己的工具备份和检查，"
        "所有使用它的应用服务器共用一份：应用不会每天复制它，也不会恢复它。"
        "请用 pg_dump 备份（用 cron 每天运行，或持续归档）；"
        "先停止所有应用服务器，再用 pg_restore 恢复；"
        "集群启用数据校验和（initdb --data-checksums，deploy/ 就是这样创建的）时，"
        "PostgreSQL 读取每一页都会检查，pg_amcheck 检查表和索引。"
        "针对这个数据库的命令：",
    ),
    "backups_no_pg_dump": (
        "pg_dump is not installed on this machine (apt-get install postgresql-client): run the "
        "commands above where it is.",
        "这台机器上没有安装 pg_dump（apt-get install postgresql-client）："
        "请在装有它的机器上运行上面的命令。",
    ),
    "backup_now": ("Back up now", "立即备份"),
    "backup_made": ("Backup written: {name}", "已写入备份：{name}"),
    "continue_new_version": (
        "Continue adds a new version",
        "“继续”时新增一个版本",
    ),
    "continue_new_version_help": (
        "Off (the default, as in SillyTavern): continue makes the version shown longer. On: it "
        "keeps that version and adds the longer text as a new one.",
        "关闭（默认，与 SillyTavern 相同）：“继续”会加长当前显示的版本。开启：保留该版本，"
        "把加长后的文字作为新版本添加。",
    ),
    "no_backups": ("There is no backup yet.", "还没有备份。"),
    "backup_choose": ("Backup", "备份"),
    "backup_label": ("{when} · {size} MB · {name}", "{when} · {size} MB · {name}"),
    "backup_before_restore": ("kept before a restore", "恢复前保留的"),
    "restore": ("Restore", "恢复"),
    "restore_confirm": (
        "Replace the current database with the backup of {when}? The current one is copied "
        "into the backups folder first.",
        "用 {when} 的备份替换当前数据库？当前数据库会先复制到备份文件夹。",
    ),
    "restored": (
        "Restored the backup of {when}. The database it replaced is kept as {kept}.",
        "已恢复 {when} 的备份。被替换的数据库保存为 {kept}。",
    ),
    "db_problem_title": ("The database cannot be used", "无法使用数据库"),
    "db_problem_file": ("The database file:", "数据库文件："),
    "db_problem_what": ("What is wrong:", "问题："),
    "db_problem_todo": (
        "What to do: restore a backup below; the current file is copied into {folder} first, "
        "so nothing is lost. Or stop the app, move the file somewhere else and start the app "
        "again, to begin with an empty database. The app has not changed the file.",
        "怎么办：在下面恢复一个备份，当前文件会先复制到 {folder}，不会丢失任何东西。"
        "或者停止应用，把该文件移到别处再启动应用，从空数据库开始。应用没有改动这个文件。",
    ),
    "db_problem_no_restore": (
        "This page restores backups only when opened on the machine the app runs on. From "
        "here, restore by hand: stop the app and copy a backup over the database file.",
        "只有在运行应用的机器上打开此页面才能恢复备份。在这里请手动恢复：停止应用，"
        "用一个备份覆盖数据库文件。",
    ),
    "threads": ("Threads", "线程"),
    "threads_count": ("CPU threads (0 = automatic: {n})", "CPU 线程数（0 = 自动：{n}）"),
    "threads_help": (
        "How many CPU threads the model computes with. The automatic count leaves cores free "
        "for your browser and other programs: a model that wants every core slows down many "
        "times over as soon as another program needs one.",
        "模型计算使用的 CPU 线程数。自动值会为浏览器和其他程序留出核心：占满所有核心的模型，"
        "一旦有别的程序需要核心，就会慢上许多倍。",
    ),
    "threads_in_use": (
        "The model computes with {n} thread.|The model computes with {n} threads.",
        "模型正在使用 {n} 个线程。",
    ),
    "threads_speed": (
        "Last reply: {tok_s} tokens/s with {n} thread.|Last reply: {tok_s} tokens/s with {n} "
        "threads.",
        "上一条回复：{tok_s} 词元/秒（{n} 个线程）。",
    ),
    "threads_speed_unknown": ("Last reply: {tok_s} tokens/s.", "上一条回复：{tok_s} 词元/秒。"),
    "threads_crowded": (
        "{n} threads use every CPU this app may run on ({cpus}). They help only while nothing "
        "else needs a core: when another program does (a browser, a second model, a build), "
        "the threads wait for each other and replies slow down many times over (on a busy "
        "2-core machine, 2 threads made 2.7 tokens/s where 1 made 14.4). Compare the speed "
        "of the next reply with the last one, and go back to automatic (0) if it fell.",
        "{n} 个线程占用了本应用可用的全部 CPU（{cpus} 个）。只有在没有别的程序需要核心时，"
        "更多线程才有帮助：一旦别的程序（浏览器、另一个模型、编译任务）需要核心，线程会互相等待，"
        "回复会慢上许多倍"
        "（在繁忙的双核机器上，2 个线程只有 2.7 词元/秒，1 个线程有 14.4 词元/秒）。"
        "请把下一条回复的速度和上一条比较，如果变慢了就改回自动（0）。",
    ),
    "meta_interrupted": ("interrupted", "已中断"),
    # --- api: keys and allowed origins (Settings)
    "api": ("API", "API"),
    "api_base": (
        "Other programs reach the app at {url}/v1 (OpenAI-compatible: SillyTavern, scripts) "
        "and {url}/api (the app's own characters and chats).",
        "其他程序可以通过 {url}/v1（兼容 OpenAI：SillyTavern、脚本）和 {url}/api"
        "（应用自己的角色和对话）访问本应用。",
    ),
    "api_key_required": (
        "Every API call needs a key now (`Authorization: Bearer KEY`), because {why}.",
        "现在每个 API 调用都需要密钥（`Authorization: Bearer KEY`），因为{why}。",
    ),
    "api_why_env_password": (
        "the environment variable RP_PASSWORD sets a password",
        "环境变量 RP_PASSWORD 设置了密码",
    ),
    "api_why_password": ("a password is set", "设置了密码"),
    "api_why_listen": (
        "the server listens beyond this machine",
        "服务器在本机以外的网络上监听",
    ),
    "api_why_and": (" and ", "，并且"),
    "api_key_not_required": (
        "API calls need no key now: the server listens on this machine only and no password "
        "is set. Programs on this machine can use the API freely; once a password is set, they "
        "need a key made here.",
        "现在 API 调用不需要密钥：服务器只在本机监听，且没有设置密码。本机上的程序可以直接使用 "
        "API；设置密码后，它们需要一个在这里创建的密钥。",
    ),
    "api_keys": ("API keys", "API 密钥"),
    "api_key_name": ("Name of the new key", "新密钥的名称"),
    "api_key_name_help": (
        "Say what will use it (SillyTavern, a phone), to tell keys apart later.",
        "写明谁会用它（SillyTavern、手机），方便以后区分。",
    ),
    "api_create_key": ("Create a key", "创建密钥"),
    "api_key_created": (
        "The key {name} was created. Copy it now (the button at the right of the box): it is "
        "shown only this once, the app keeps only a fingerprint of it.",
        "已创建密钥 {name}。请现在复制（框右侧的按钮）：它只显示这一次，应用只保存它的指纹。",
    ),
    "api_no_keys": ("No key yet.", "还没有密钥。"),
    "api_key_row": ("{name} · {shown} · created {created}", "{name} · {shown} · 创建于 {created}"),
    "api_revoke": ("Revoke", "吊销"),
    "api_revoke_confirm": (
        "Revoke the key {name}? Programs that use it are refused from then on.",
        "吊销密钥 {name}？使用它的程序此后都会被拒绝。",
    ),
    "api_revoke_yes": ("Revoke for good", "永久吊销"),
    "api_key_revoked": ("The key {name} was revoked.", "密钥 {name} 已吊销。"),
    "api_err_key_name": (
        "Give the key a name, to tell it apart later.",
        "请给密钥起个名字，方便以后区分。",
    ),
    "api_err_too_many_keys": (
        "There are already {n} keys: revoke one first.",
        "已经有 {n} 个密钥：请先吊销一个。",
    ),
    "api_origins": ("Allowed origins", "允许的来源"),
    "api_notes": (
        "Notes at a depth (SillyTavern's Author's Note)",
        "插入在某一深度的注释（SillyTavern 的作者注释）",
    ),
    "api_notes_auto": ("next to the reply for RWKV", "RWKV 模型放在回复旁"),
    "api_notes_reply": ("next to the reply", "放在回复旁"),
    "api_notes_depth": ("where the client puts them", "按客户端的位置"),
    "api_notes_help": (
        "SillyTavern sends its Author's Note and a card's Character's Note as a system message "
        "4 messages above the end, a place that moves every turn: the model must then read "
        "the messages after it again each turn. Next to the reply (where this app's own chats "
        "put such notes) a turn feeds only its new tokens; the note is not kept in the chat's "
        "state for later turns.",
        "SillyTavern 把作者注释和角色卡的角色注释作为系统消息放在倒数第 4 条消息之上，"
        "这个位置每轮都会移动，模型每轮都得重读它之后的消息。放在回复旁（本应用自己的聊天也这样放）时，"
        "每轮只需处理新的词元；注释不会留在之后各轮的聊天状态里。",
    ),
    "api_origins_help": (
        "Web pages of other sites may call the API from a browser only if their origin is "
        "listed here, one a line: scheme://host[:port], like http://localhost:8000, without a "
        "path. Programs that are not web pages (SillyTavern's server, scripts) need no entry.",
        "其他网站的网页只有在其来源列在这里时，才能从浏览器调用 API。每行一个：scheme://host[:port]，"
        "例如 http://localhost:8000，不带路径。"
        "不是网页的程序（SillyTavern 的服务器、脚本）不需要填写。",
    ),
    "api_save_origins": ("Save the origins", "保存来源"),
    "api_err_origin": (
        "{value} is not an origin: write scheme://host[:port], like http://localhost:8000, "
        "without a path. Nothing was saved.",
        "{value} 不是来源：请写成 scheme://host[:port]，例如 http://localhost:8000，不带路径。"
        "没有保存任何内容。",
    ),
    "api_err_too_many_origins": (
        "At most {n} origins can be allowed. Nothing was saved.",
        "最多允许 {n} 个来源。没有保存任何内容。",
    ),
    "api_origins_saved": ("Allowed origins saved: {n}.", "已保存允许的来源：{n} 个。"),
    "api_origins_star": (
        '"*" lets every web site call the API through the browser of whoever opens it. '
        "Keep it only with a password set, so that calls need a key.",
        "“*”允许任何网站通过打开它的人的浏览器调用 API。"
        "只有在设置了密码（调用需要密钥）时才保留它。",
    ),
    # --- model loading at start
    "model_loading_bg": (
        "Loading the model {name}… You can look around meanwhile; a reply starts once it is ready.",
        "正在加载模型 {name}…可以先随便看看；模型就绪后即开始回复。",
    ),
    "reply_waits_load": (
        "Waiting for the model {name} to finish loading…",
        "正在等待模型 {name} 加载完成…",
    ),
    "retry_load": ("Try loading {name} again", "重新加载 {name}"),
    # --- lorebooks
    "lorebooks": ("Lorebooks (World Info)", "世界书（World Info）"),
    "lore_book": ("Lorebook", "世界书"),
    "lore_none": (
        "No lorebook yet: create one or import a World Info file.",
        "还没有世界书：新建一本或导入 World Info 文件。",
    ),
    "lore_new_name": ("New lorebook's name", "新世界书的名字"),
    "lore_create": ("Create", "新建"),
    "lore_import": ("Import a World Info file (.json)", "导入 World Info 文件（.json）"),
    "lore_import_btn": ("Import", "导入"),
    "lore_imported": (
        "Imported the lorebook {name} ({n} entry).|Imported the lorebook {name} ({n} entries).",
        "已导入世界书 {name}（{n} 个条目）。",
    ),
    "lore_created": ("Created the lorebook {name}.", "已新建世界书 {name}。"),
    "lore_saved": ("Saved the lorebook {name}.", "已保存世界书 {name}。"),
    "lore_deleted": ("Deleted the lorebook {name}.", "已删除世界书 {name}。"),
    "lore_export": ("Export (World Info JSON)", "导出（World Info JSON）"),
    "lore_delete": ("Delete this lorebook", "删除这本世界书"),
    "lore_delete_confirm": (
        "Delete {name}? Characters and chats lose it.",
        "删除 {name}？角色和对话将不再使用它。",
    ),
    "lore_name": ("Name", "名字"),
    "lore_description": ("Description", "描述"),
    "lore_global": ("Global: used in every chat", "全局：所有对话都使用"),
    "lore_scan_depth": ("Scan depth (messages)", "扫描深度（条消息）"),
    "lore_budget": ("Token budget (0 = {n})", "令牌预算（0 = {n}）"),
    "lore_recursive": (
        "Recursive: entries' text can fire more entries",
        "递归：条目的内容可以触发更多条目",
    ),
    "lore_case": ("Case-sensitive keys", "关键词区分大小写"),
    "lore_whole": ("Match whole words", "全词匹配"),
    "lore_search": ("Search entries", "搜索条目"),
    "lore_search_ph": ("key, content or comment", "关键词、内容或备注"),
    "lore_shown": ("{n} of {total} entries shown", "显示 {n} / {total} 个条目"),
    "lore_table_help": (
        "Keys are separated by commas; /regex/flags is a regular expression. Add a row at the "
        "bottom, delete with the row's checkbox, then save.",
        "关键词用逗号分隔；/正则/标志 表示正则表达式。在底部添加行，勾选行可删除，然后保存。",
    ),
    "lore_save": ("Save lorebook", "保存世界书"),
    "lore_add_entry": ("Add an entry", "添加条目"),
    "lore_add_keys": ("Keys (comma-separated)", "关键词（逗号分隔）"),
    "lore_add_content": ("Content", "内容"),
    "lore_add_comment": ("Comment (title)", "备注（标题）"),
    "lore_add_constant": ("Constant (always in the chat's opening)", "常驻（总在对话开头）"),
    "lore_added": ("Added an entry to {name}.", "已向 {name} 添加条目。"),
    "lore_col_enabled": ("On", "启用"),
    "lore_col_constant": ("Constant", "常驻"),
    "lore_col_key": ("Keys", "关键词"),
    "lore_col_secondary": ("Secondary keys", "次要关键词"),
    "lore_col_logic": ("Logic", "逻辑"),
    "lore_col_content": ("Content", "内容"),
    "lore_col_order": ("Order", "顺序"),
    "lore_col_probability": ("%", "%"),
    "lore_col_comment": ("Comment", "备注"),
    "lore_attached": ("Lorebooks of this character", "该角色的世界书"),
    "lore_attach_help": (
        "Changing the books' constant entries changes the chat's opening: the next reply reads "
        "the chat again.",
        "更改世界书的常驻条目会改变对话开头：下一次回复会重新读取整个对话。",
    ),
    "lore_own_book": (
        "The card's own lorebook ({n} entry)|The card's own lorebook ({n} entries)",
        "角色卡自带的世界书（{n} 个条目）",
    ),
    "lore_copy_own": ("Copy to the lorebooks", "复制到世界书列表"),
    "lore_copied": (
        "Copied as the lorebook {name}: attach it to other characters or chats.",
        "已复制为世界书 {name}：可以把它用于其他角色或对话。",
    ),
    "lore_chat_books": ("Lorebooks of this chat", "本对话的世界书"),
    "lore_fired": ("Lore: {n} entry|Lore: {n} entries", "世界书：{n} 个条目"),
    "lore_fired_entry": ("{title} — {book}", "{title} — {book}"),
    "lore_errors": ("Skipped keys: {text}", "已跳过的关键词：{text}"),
    # --- group chats
    "group_new": ("New group chat", "新建群聊"),
    "group_pick": ("Characters (two or more)", "角色（两个或更多）"),
    "group_start": ("Start group chat", "开始群聊"),
    "group_need_two": ("Choose at least two characters.", "请至少选择两个角色。"),
    "group_settings": ("Group", "群聊"),
    "group_members": ("Members", "成员"),
    "group_activation": ("Who speaks next", "谁下一个说话"),
    "group_mode_natural": (
        "Natural order (named, then talkative)",
        "自然顺序（先被点名的，再按健谈程度）",
    ),
    "group_mode_list": ("In turn (fixed order)", "轮流（固定顺序）"),
    "group_mode_manual": ("Manual (you choose)", "手动（由你选择）"),
    "group_allow_self": ("A character may answer itself", "角色可以接着自己的话说"),
    "group_auto_turns": ("Turns in auto mode", "自动模式的轮数"),
    "group_auto_start": (
        "Let them talk ({n} turn)|Let them talk ({n} turns)",
        "让他们聊（{n} 轮）",
    ),
    "group_auto_stop": ("Stop auto mode", "停止自动模式"),
    "group_auto_left": (
        "Auto mode: {n} turn left|Auto mode: {n} turns left",
        "自动模式：还剩 {n} 轮",
    ),
    "group_mute": ("Mute {name}", "将 {name} 静音"),
    "group_unmute": ("Unmute {name}", "取消 {name} 的静音"),
    "group_muted": ("{name} (muted)", "{name}（已静音）"),
    "group_remove": ("Remove {name}", "移出 {name}"),
    "group_add": ("Add a character", "添加角色"),
    "group_add_btn": ("Add to the chat", "加入聊天"),
    "group_added": (
        "{name} joined: their card is read once, before the next reply.",
        "{name} 已加入：其角色卡会在下一条回复之前读入一次。",
    ),
    "group_nobody": (
        "Nobody speaks on their own now (all muted, or the last speaker may not answer "
        "itself): choose who speaks next below.",
        "现在没有人会自动发言（都已静音，或上一位不能接着自己说）：请在下方选择谁说话。",
    ),
    # --- role play: card fields, what the model saw
    "preset_auto": ("The model's own (recommended)", "模型推荐值"),
    "preset_rwkv": ("RWKV recommended", "RWKV 推荐值"),
    "preset_instruct": ("Small instruct models", "小型指令模型"),
    "prompt_view": ("What the model saw", "模型看到的内容"),
    "prompt_view_counts": (
        "{prompt} prompt tokens: {cached} from the cache, {fed} fed for this reply.",
        "提示共 {prompt} 个词元：{cached} 个来自缓存，{fed} 个为这条回复新输入。",
    ),
    "prompt_view_count": (
        "{prompt} prompt tokens (how many came from the cache was not recorded for this message).",
        "提示共 {prompt} 个词元（这条消息没有记录缓存用量）。",
    ),
    "prompt_view_close": ("Close", "关闭"),
    # --- batched versions
    "regenerate_3": ("Write 3 versions at once", "一次写 3 个版本"),
    "writing_versions": ("Writing {n} versions at once…", "正在同时写 {n} 个版本…"),
}

STRINGS: dict[str, dict[str, str]] = {k: dict(zip(LANGS, v, strict=True)) for k, v in _S.items()}


def plural(text: str, n: Any) -> str:
    """The form of `text` ("one|other") for the count `n`; a text with one form as it is."""
    if "|" not in text:
        return text
    one, _, other = text.partition("|")
    try:
        return one if float(n) == 1 else other
    except (TypeError, ValueError):
        return other


def t(key: str, lang: str = DEFAULT_LANG, **fmt: Any) -> str:
    """The text of `key` in `lang` ("en" or "zh"), with `{fields}` filled from `fmt` (its
    plural form chosen by `n`)."""
    entry = STRINGS.get(key)
    if entry is None:
        text = key
    else:
        text = entry.get(lang) or entry[DEFAULT_LANG]
    text = plural(text, fmt.get("n"))
    if fmt:
        try:
            text = text.format(**fmt)
        except (KeyError, IndexError, ValueError):
            pass
    return text
