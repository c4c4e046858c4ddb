from hedgerow import cli

cli.main()
