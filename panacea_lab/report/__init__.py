"""Generated documentation: the results pages and the front page's verdict, from the committed files."""
