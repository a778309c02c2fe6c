from duckmesh.cli import main

main()
