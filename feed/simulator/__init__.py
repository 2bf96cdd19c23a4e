"""A simulated département over the real protocols (`roadfeed simulate`)."""
