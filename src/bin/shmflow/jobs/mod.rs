//! The built-in jobs of `shmflow run` (wordcount, window-wordcount, shuffle), the text and
//! records they use, and their output file. They are the command line's, not the
//! library's: tests, benches and fuzz targets that need them include this module by path.

pub mod output;
pub mod shuffle;
pub mod synthetic;
pub mod text;
pub mod wordcount;

pub use output::{merge_parts, most_frequent, part_files, refuse_output_over_input, OutputFile};
pub use shuffle::{latency_histogram, shuffle_job, shuffle_latency_job, shuffle_totals, Latency};
pub use text::TextSource;
pub use wordcount::{window_wordcount_job, wordcount_job_with};
// For the tests, benches and fuzz targets that include this module by path.
#[allow(unused_imports)]
pub use {
    shuffle::Stamped,
    synthetic::Synthetic,
    text::{generator, reference_window_lines, reference_wordcount, tokenize},
    wordcount::wordcount_job,
};
