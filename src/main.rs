fn main() {
    std::process::exit(dataref::cli::main());
}
