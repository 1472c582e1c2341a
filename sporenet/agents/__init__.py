"""pykka actors: thin glue that feeds protocol objects and executes their actions."""
