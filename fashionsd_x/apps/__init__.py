"""The apps: FashionSD-X Studio (designers) and the user study (researchers)."""
